"""What to do with the labels after training: cross-fitted out-of-sample probabilities and the review sheet."""
