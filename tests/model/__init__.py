"""Tests of vfrac.model: the network, training, the convolution gradient, the baseline, the predictor."""
