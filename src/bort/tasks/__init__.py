"""Tasks (GLUE, SuperGLUE, your own files), their metrics, and fine-tuning on the engine."""

from bort.tasks.generic import file_task
from bort.tasks.registry import Example, Task, get_task, list_tasks, register_task

__all__ = ["Example", "Task", "file_task", "get_task", "list_tasks", "register_task"]
