"""The documentation's walkthroughs, run as a reader would run them."""
