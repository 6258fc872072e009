"""Decisions: pure functions from facts and a request to a frozen result, with reasons.

Strategy (:mod:`.strategy`), devices (:mod:`.devices`), threads (:mod:`.threads`), precision
(:mod:`.precision`) and the pytest session (:mod:`.session`). Modules here import facts,
errors and each other, never an action (a module that touches TensorFlow or the process):
``tests/test_architecture.py`` checks it.
"""
