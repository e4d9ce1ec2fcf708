"""Learning: the training settings, the robust loss and SAM, the training loop on Ray
Train, balancing and splitting the rows, promotion and retraining from labels."""
