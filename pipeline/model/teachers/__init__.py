"""Frozen teacher models for distillation and their on-disk embedding cache.

``create_teacher("sface" | "dlib" | "precomputed", **options)`` builds a :class:`Teacher`; a teacher maps
aligned uint8 (N, 112, 112, 3) RGB crops to float32 L2-normalised (N, D) embeddings. :class:`TeacherCache`
keeps them on disk keyed by (image sha256, teacher version, aligner version). OpenCV and dlib are imported only
when their teacher is created.
"""

from pipeline.model.teachers.base import (
           Teacher,
           available_teachers,
           check_crops,
           create_teacher,
)
from pipeline.model.teachers.cache import CacheEntry, TeacherCache
from pipeline.model.teachers.precomputed import PrecomputedTeacher, write_precomputed

__all__ = ["CacheEntry", "PrecomputedTeacher", "Teacher", "TeacherCache", "available_teachers", "check_crops",
           "create_teacher", "write_precomputed"]
