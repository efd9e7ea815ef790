"""Vision encoders and their pretraining objectives."""
