"""Flower engine for the multi-round mode (the optional extra `fedinv[flower]`)."""
