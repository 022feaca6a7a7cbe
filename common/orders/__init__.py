"""The application layer: the order commands that the API, the stages and the jobs run, and what they send.

Importers name the module that holds what they need (``common.orders.commands``, ``.errors``, ...).
"""
