"""The report app's pages, one module each: ``runs``, ``run`` (with its tabs ``ranking``,
``samples``, ``accuracy`` and ``attribution``), ``evaluation``, ``compare`` and ``labels``
(with ``labelling``). Each page is a function ``(root, rows)`` that ``report_app/app.py``
calls for the page chosen in the sidebar."""
