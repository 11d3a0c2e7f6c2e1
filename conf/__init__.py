"""fvexp's Hydra configs. This folder is installed as the package `fvexp.conf` so Hydra finds it in any install."""
