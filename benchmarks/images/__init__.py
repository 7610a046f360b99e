"""The image benchmarks: NLL against S, epoch cost, profiles, the authors' code."""
