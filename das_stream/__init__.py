"""The `das-stream` command: the top layer, the one place that parses command lines and dispatches
to the runtime (``streamer``) and to training (``training``)."""
