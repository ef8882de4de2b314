// Writes a file so that, killed at any moment, the target path holds either its previous
// content or the complete new file, never a partial one.
//
// The data goes into an unnamed O_TMPFILE inode in the target's directory (so a kill leaves
// nothing behind at all); where the filesystem lacks O_TMPFILE, into ".NAME.tmp-XXXXXX" beside
// the target, removed on failure. The full size is reserved up front with posix_fallocate, so a
// full disk is reported before any work is done. commit() fsyncs the data, gives the inode a
// name, renames it over the target and fsyncs the directory.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string_view>

namespace ferry {

class AtomicFile {
 public:
  AtomicFile(std::filesystem::path target, uint64_t size);  // throws ferry::Error (e.g. disk full)
  ~AtomicFile();                                            // without commit(): discards the data
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void pwrite_all(const void* data, uint64_t n, uint64_t offset) const;  // throws ferry::Error
  void pread_all(void* data, uint64_t n, uint64_t offset) const;
  void commit();
  const std::filesystem::path& target() const { return target_; }

 private:
  void discard();
  std::filesystem::path target_;
  std::filesystem::path named_tmp_;  // fallback temp name; empty when O_TMPFILE is used
  int fd_ = -1;
  bool committed_ = false;
};

// Refuses, with one line, an output path that the final rename would mishandle: an empty path, an
// existing directory, device, FIFO or socket (renaming over /dev/null would replace the device
// node with a regular file), or a parent directory that is missing, not a directory or not
// writable. Called before any work, so that a bad -o costs nothing; AtomicFile checks it too.
void check_output_path(const std::filesystem::path& target);

// Writes `text` to `target` through an AtomicFile: the path holds its old content or all of the
// new, never part. Throws ferry::Error naming the path and the reason.
void write_file_atomic(const std::filesystem::path& target, std::string_view text);

}  // namespace ferry
