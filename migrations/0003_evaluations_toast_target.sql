-- Keep `evaluations` rows short, so that updating one copies little.
--
-- An eval's lifecycle events usually arrive in different writes, so most rows are inserted once
-- and updated two or three times, and every update writes a whole new row version (and its WAL
-- record). With the default target (about 2 KiB) a row keeps its lz4-compressed code inline:
-- about 2.8 KiB a row, copied at every update. With 1 KiB, the long texts of a row over that go
-- to the TOAST table once, and updates copy only their pointers (a value that does not change
-- is not written again). Measured by `benches/postgres.sh`'s every-table load: 3-4% less time.
ALTER TABLE evaluations SET (toast_tuple_target = 1024);
