"""The embedding models' contract shared by the embedder (which serves them) and its clients: names,
dimensions, input size, and the content kind each one embeds."""

IMAGE_MODEL = "efficientnet_lite0"
TEXT_MODEL = "minilm_l6"
IMAGE_SIZE = 224
IMAGE_DIM = 1280
TEXT_DIM = 384
MAX_BATCH_SIZE = 64
# The parameter of a model's config.pbtxt that holds its version, `<model>@<sha12>+<runtime>`.
VERSION_PARAMETER = "semsearch_version"
# Words for pictures: text queries placed in IMAGE_MODEL's feature space through ImageNet's classes
# (services/embedder/bridge.py).
BRIDGE_MODEL = "imagenet_bridge"
# Which kind of content each collection model embeds (what its items are).
MODEL_KINDS = {IMAGE_MODEL: "image", TEXT_MODEL: "text"}
# Which served model answers each kind of query on a collection of a model.
QUERY_MODELS = {
    IMAGE_MODEL: {"image": IMAGE_MODEL, "text": BRIDGE_MODEL},
    TEXT_MODEL: {"text": TEXT_MODEL},
}
# The dimension of each served model's vectors.
MODEL_DIMS = {IMAGE_MODEL: IMAGE_DIM, TEXT_MODEL: TEXT_DIM, BRIDGE_MODEL: IMAGE_DIM}
