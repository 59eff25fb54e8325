"""VAE variants: one ``nn.Module`` file each, with the interface of ``vae.VAE``."""
