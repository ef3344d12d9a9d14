"""The small core every layer may import: the error hierarchy, configuration reading, and the
rules both training and the runtime follow (how a stream is cut into windows, how it is brought
to the model's frame rate). No torch, no asyncio, no network.
"""
