"""Running the platform on a Ray cluster: job submission and the cluster's configuration files."""
