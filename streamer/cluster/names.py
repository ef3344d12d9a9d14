"""The names the cluster's parts find each other by (no Ray, no torch: ``cluster status`` reads them)."""

APP_NAME = "das-stream"
DEPLOYMENT_NAME = "embedder"
NAMESPACE = "das-stream"
STATE_ACTOR = "das-stream-state"
