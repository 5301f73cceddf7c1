"""Where the published weights live on the Hugging Face hub: the repo id and each model's file name.

One home for both, read by `torch_impl.loading` (which fetches) and `dfc` (which names them in help and
advice). Framework-free.
"""

DEFAULT_REPO = "floatingtrees2/dynamic-frame-compression"
HUB_FILENAMES = {"vae": "vae_pytorch.pt", "dit": "dit_pytorch.pt"}
