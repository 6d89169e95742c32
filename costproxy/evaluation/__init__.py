"""Calibrate quality profiles from an evaluation data set and replay it through the selection engine.

Modules: ``dataset`` (the documented CSV format and its reader), ``calibrate`` (fit quality
profiles and a price registry for the data set's models on its train split), ``replay``
(``costproxy eval``: route the test split with the real ``analyze`` + ``select``, compare with
baselines under bootstrap confidence intervals, draw the cost–quality curve) and ``commands``
(the ``costproxy calibrate`` / ``costproxy eval`` entry points).  None of them imports aiohttp or
redis; numpy is needed (``pip install costproxy[eval]``), matplotlib only for the picture.
"""
