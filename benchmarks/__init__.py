"""The experiment layer: datasets and the Time-Series-Library protocol, training, tracking and benchmarks."""
