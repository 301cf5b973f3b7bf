"""Running the platform on a Ray cluster: `mixbench submit` / `mixbench jobs` (commands, submission, job_server) and
the cluster's configuration files (aws-gpu.yaml, kuberay-rayjob.yaml, mlflow-server.sh, mlflow-k8s.yaml); guide in
docs/cluster.md."""
