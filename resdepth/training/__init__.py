"""The LightningModule, the CUDA-graph step, device choice, records, loggers, one run, load_run."""
