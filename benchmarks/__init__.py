"""rlvr's benchmarks, run from the checkout's root as modules: `python -m benchmarks.<group>.<name>`.

micro/        one part at a time (engine, learner, sandbox, verifier, weight sync, value model) and the
              whole step against TRL, as ratios measured in one run
profiles/     where a step's time and memory go (phases, roofline, scaling, the GPU check)
experiments/  what learning does: the learning-efficiency grid, lr search, preset checks, the oracle
              report and the policy-gradient simulator
common.py     what they share: the checkout's paths, reports, settings each in a fresh process
"""
