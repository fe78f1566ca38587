"""The map methods and the default layer, apart from the code that computes maps: commands list
them in their help without loading TensorFlow."""

METHODS = ("gradcam", "gradcam++", "scorecam", "layercam", "hirescam")
DEFAULT_LAYER = "conv5_block3_out"  # 7 x 7 at input 224
