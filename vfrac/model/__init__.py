"""The networks and how they learn: ResNet50 and its head, the training loop, the faster
convolution gradient, and the radiomics baseline."""
