"""vaelab: a PyTorch Lightning + Hydra research template for variational autoencoders.

Layers, from the bottom (imports only go down): ``science`` (networks, VAE variants,
likelihoods, bounds, KL schedules; plain torch), ``data``, ``evaluation`` (metrics, classifier,
figures), ``lit`` (the LightningModule and callbacks), ``runs`` (what train.py, eval.py and
sample.py run, and the run infrastructure). ``errors`` holds the error types of every layer.
"""

__version__ = "0.1.0"
