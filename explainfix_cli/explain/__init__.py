"""ExplainSteer spectra, fixed spatial filters (DCT, GHaar), figures."""
