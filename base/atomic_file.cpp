#include "base/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "base/bytes.hpp"
#include "base/error.hpp"

namespace ferry {
namespace {

std::filesystem::path parent_dir(const std::filesystem::path& p) {
  return p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
}

std::string disk_full_message(const std::filesystem::path& target, uint64_t size) {
  struct statvfs s {};
  const std::filesystem::path dir = parent_dir(target);
  const double free_bytes =
      statvfs(dir.c_str(), &s) == 0 ? double(s.f_bavail) * double(s.f_frsize) : 0.0;
  return fmt::format(
      "{}: not enough disk space: the output needs {}, {} has {} free; free some space or "
      "write elsewhere",
      target.string(), human_bytes(double(size)), dir.string(), human_bytes(free_bytes));
}

[[noreturn]] void throw_errno(const std::filesystem::path& p, const char* op, int err) {
  throw Error(fmt::format("{}: {} failed: {}", p.string(), op, std::strerror(err)));
}

}  // namespace

void check_output_path(const std::filesystem::path& target) {
  namespace fs = std::filesystem;
  if (target.empty())
    throw Error(Setting::output, "the output path is empty; name the file to write");
  std::error_code ec;
  const fs::file_status st = fs::status(target, ec);
  if (!target.has_filename())
    throw Error(Setting::output,
                fmt::format("{}: ends in '/', a directory; give the path of the file to write",
                            target.string()));
  if (fs::is_directory(st))
    throw Error(Setting::output,
                fmt::format("{}: is a directory; give the path of the file to write, e.g. {}",
                            target.string(), (target / "model.ferry").string()));
  if (fs::exists(st) && !fs::is_regular_file(st))
    throw Error(
        fmt::format("{}: exists and is not a regular file (a device, FIFO or socket); "
                    "ferry would replace it with its output: choose another path",
                    target.string()));
  const fs::path dir = parent_dir(target);
  if (!fs::exists(fs::status(dir, ec)))
    throw Error(fmt::format("{}: directory {} does not exist; create it first", target.string(),
                            dir.string()));
  if (!fs::is_directory(fs::status(dir, ec)))
    throw Error(fmt::format("{}: {} is not a directory", target.string(), dir.string()));
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw Error(fmt::format("{}: cannot write to directory {}: {}", target.string(), dir.string(),
                            std::strerror(errno)));
}

AtomicFile::AtomicFile(std::filesystem::path target, uint64_t size) : target_(std::move(target)) {
  check_output_path(target_);
  const std::filesystem::path dir = parent_dir(target_);
  fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
  if (fd_ < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    // fmt, not "." + name + ...: GCC 12 at -O3 reports a false -Wrestrict inside that
    // std::string concatenation (GCC bug 105329).
    std::string tmpl = (dir / fmt::format(".{}.tmp-XXXXXX", target_.filename().string())).string();
    fd_ = mkstemp(tmpl.data());
    if (fd_ >= 0) named_tmp_ = tmpl, fchmod(fd_, 0644);
  }
  if (fd_ < 0) throw_errno(target_, "creating the file", errno);
  if (size == 0) return;
  const int rc = posix_fallocate(fd_, 0, off_t(size));
  // Filesystems without fallocate support (EOPNOTSUPP) still get a correct file; a full disk is
  // then reported by the first failing write.
  if (rc == 0 || rc == EOPNOTSUPP || rc == EINVAL) return;
  discard();  // the destructor does not run when a constructor throws
  if (rc == ENOSPC) throw Error(disk_full_message(target_, size));
  throw_errno(target_, "reserving space", rc);
}

AtomicFile::~AtomicFile() {
  discard();
}

void AtomicFile::discard() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!committed_ && !named_tmp_.empty()) ::unlink(named_tmp_.c_str());
  named_tmp_.clear();
}

void AtomicFile::pwrite_all(const void* data, uint64_t n, uint64_t offset) const {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, p, n, off_t(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == ENOSPC || errno == EDQUOT)) throw Error(disk_full_message(target_, n));
    if (w <= 0) throw_errno(target_, "write", errno);
    p += w, n -= uint64_t(w), offset += uint64_t(w);
  }
}

void AtomicFile::pread_all(void* data, uint64_t n, uint64_t offset) const {
  auto* p = static_cast<uint8_t*>(data);
  while (n > 0) {
    const ssize_t r = ::pread(fd_, p, n, off_t(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) throw_errno(target_, "read back", r < 0 ? errno : EIO);
    p += r, n -= uint64_t(r), offset += uint64_t(r);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) throw_errno(target_, "fsync", errno);
  const std::filesystem::path dir = parent_dir(target_);
  if (named_tmp_.empty()) {
    // Give the unnamed inode a temporary name, then rename it over the target (linkat cannot
    // replace an existing file). A kill between the two leaves a complete file under the temp name.
    named_tmp_ = dir / fmt::format(".{}.tmp-{}", target_.filename().string(), ::getpid());
    ::unlink(named_tmp_.c_str());
    const std::string proc = fmt::format("/proc/self/fd/{}", fd_);
    if (::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, named_tmp_.c_str(), AT_SYMLINK_FOLLOW) != 0) {
      const int err = errno;
      named_tmp_.clear();
      throw_errno(target_, "naming the output file", err);
    }
  }
  if (::rename(named_tmp_.c_str(), target_.c_str()) != 0) throw_errno(target_, "rename", errno);
  committed_ = true;
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) ::fsync(dfd), ::close(dfd);
}

void write_file_atomic(const std::filesystem::path& target, std::string_view text) {
  AtomicFile f(target, text.size());
  f.pwrite_all(text.data(), text.size(), 0);
  f.commit();
}

}  // namespace ferry
