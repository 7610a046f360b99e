"""Label transfer and calibration: MixSCANVI against SCANVI and kNN votes."""
