"""Load testing of the clipshield TorchServe deployment with locust (issue 6).

`payloads.py` precomputes the request bodies (clean and PGD-perturbed mini-world PNGs, custom label
sets), `contract.py` checks each answer, `locustfile.py` is the locust user, `report.py` reads
locust's CSV output and `run_loadtest.py` ties it together (`make loadtest`). See docs/loadtest.md.
"""
