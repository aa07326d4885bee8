"""The model stage: the Siamese encoder (`encoder`), distances, batched embedding (`embed`), artefacts, and the
teachers it can be distilled from (`teachers`). Import the modules themselves: this package imports nothing, so
`pipeline.model.teachers` loads without torch (its worker processes start fast)."""
