"""The one-shot mode: partition -> teachers (teachers.py; a node's files: teacher_files.py) ->
synthesis (synthesis/) -> student (student/) -> evaluation, in one run folder (pipeline.py); the
store's audit against real data (audit.py)."""
