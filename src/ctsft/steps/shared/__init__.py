"""What several steps share: the only code besides the steps that reads the raw Hydra config.

`training` (data, start model, provenance and the loop call of finetune and transfer) and
`discovery` (theta_1, the discovery set and the CD-T engine of mean_baseline, score_heads and
faithfulness) turn the config into typed objects once; the library below never sees it.
"""
