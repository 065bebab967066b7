"""The dashboard: ``nightlab serve``'s live pages and the data behind them.

``data`` turns the ledger into what the pages show (the same dictionaries feed the live
dashboard and the static ``report.html``), ``live`` watches the ledger and the run directories
for changes, ``control`` is the file through which a page pauses or stops ``nightlab run``, and
``server`` is the Starlette application. The page itself (``static/``) is plain JavaScript and
CSS shipped in the package: nothing is fetched from the internet.
"""
