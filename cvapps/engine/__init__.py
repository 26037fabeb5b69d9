"""One training loop, one predictor and one evaluation entry for every task."""
