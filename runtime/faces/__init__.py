"""Faces in photos, for ``cvdvae run --faces``: ``detector`` (MTCNN boxes and landmarks), ``boxes``
(its box arithmetic), ``align`` (the FFHQ crop), ``paste`` (blending samples back), ``photos``
(one whole photo, composed of the above around a backend)."""
