"""kplm-text-extras: an example kplm plugin adding the ``csv_text`` data source and the
``kplm text-extras-stats`` command. The plugin itself (the hook implementations) is
``kplm_text_extras.plugin``; this package imports nothing heavy so ``kplm plugins`` stays fast."""
__version__ = "0.1.0"
