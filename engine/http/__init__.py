"""What every HTTP route checks, whichever part owns it: request validation and admin auth.

Below ``serving``, ``events`` and ``experiments`` (whose routes use it), so that none of
them imports another's package in a circle.
"""
