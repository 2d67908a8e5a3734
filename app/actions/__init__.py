"""The main window's actions, one module per feature: each builds its docks, menus and shortcuts
into the window and turns what the user asks into engine calls.

* :mod:`~app.actions.annotations`: projects, import/export, undo/redo, tools, class keys;
* :mod:`~app.actions.predictions` (and :mod:`~app.actions.prediction_accept`, A / Shift+A): the
  model, runs, the overlay, the summary;
* :mod:`~app.actions.training`: the learning loop's docks, made of :mod:`~app.actions.rounds`
  (a fine-tuning round; its plan in :mod:`~app.actions.round_plan`), :mod:`~app.actions.registry`
  (model versions; files in and out in :mod:`~app.actions.model_files`) and
  :mod:`~app.actions.review` ("Review next"), which talk through Qt signals and the engine API.
"""
