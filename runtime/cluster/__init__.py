"""``cvdvae run --ray``: a data set of inputs through Ray Data, one ``Pipeline`` per actor, the same
files ``cvdvae run`` writes, resumable (``ledger``, ``worker``, ``driver``)."""
