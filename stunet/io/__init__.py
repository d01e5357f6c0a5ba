"""Reading image files: one reader that every room uses (:mod:`.reader`: the header read and checked first, then
the voxels read once), the header checks against the file (:mod:`.headers`), and bounded reading of small JSON files
found beside images (:mod:`.json_file`).

May import: the base modules only; numpy, SimpleITK and nibabel.
"""
