"""Scale-out: one group over all local devices (``devices``), many hosts with Dask (``cluster``)."""
