"""The Ray actors that run the detector on the stream, and the pool that supervises them."""
