"""The notebooks' own code: the set-up every first cell calls (``notebook.setup``: the repository root, Colab's
clone and packages, papermill's -p checked, mistakes shown as one line), what notebooks 03-06 call (one run from
03's parameters, the runs and checkpoints 04-06 use), and Google Drive on Colab (``drive``: runs copied in place
after every epoch)."""
