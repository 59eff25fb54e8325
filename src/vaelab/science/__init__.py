"""The science: networks, VAE variants, likelihoods, bounds and KL schedules.

Plain torch; imports neither Lightning nor Hydra. Values are in nats per image."""
