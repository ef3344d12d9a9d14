"""Scale-out on Ray: one actor per stream, a Ray Serve pool of embedder replicas (docs/scale-out.md).

Nothing here imports Ray at package import time; ``streamer.cluster.driver`` does when it runs.
"""
