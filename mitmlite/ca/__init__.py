"""The certificate authority: root CA, leaf recipe, files on disk and the per-host cache."""
