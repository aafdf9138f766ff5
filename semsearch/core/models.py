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
# Which kind of content each served model embeds.
MODEL_KINDS = {IMAGE_MODEL: "image", TEXT_MODEL: "text"}
# The dimension of each served model's vectors.
MODEL_DIMS = {IMAGE_MODEL: IMAGE_DIM, TEXT_MODEL: TEXT_DIM}
