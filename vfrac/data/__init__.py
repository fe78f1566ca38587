"""From a CT to network inputs: ROI boxes and 3-slice crops, the HU window, the crop cache, splits and tf.data."""
