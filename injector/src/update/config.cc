// The machine's Polus configuration (polus/options.h, read_config_file).
#include <errno.h>
#include <sys/stat.h>

#include <sstream>
#include <stdexcept>
#include <string>

#include "polus/options.h"
#include "update/patch_trust.h"

namespace polus {

namespace {

std::string trim(const std::string& text) {
  size_t start = text.find_first_not_of(" \t\r");
  if (start == std::string::npos) return "";
  return text.substr(start, text.find_last_not_of(" \t\r") - start + 1);
}

}  // namespace

bool read_config_file(const std::string& path, EngineOptions& options) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 && errno == ENOENT) return false;
  // It says what is trusted and where the audit goes: the same checks as a patch file.
  TrustOptions trust;
  trust.kind = "configuration file";
  TrustedFile file = open_trusted_patch(path, trust);
  std::vector<uint8_t> bytes = file.read_all();
  std::istringstream lines(std::string(bytes.begin(), bytes.end()));
  int number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++number;
    line = trim(line.substr(0, line.find('#')));
    if (line.empty()) continue;
    const std::string where = path + " line " + std::to_string(number);
    size_t equals = line.find('=');
    if (equals == std::string::npos) throw std::invalid_argument(where + ": expected 'key = value', got '" + line + "'");
    const std::string key = trim(line.substr(0, equals));
    const std::string value = trim(line.substr(equals + 1));
    auto yes_no = [&]() {
      if (value == "yes" || value == "true" || value == "1") return true;
      if (value == "no" || value == "false" || value == "0") return false;
      throw std::invalid_argument(where + ": " + key + " takes yes or no, not '" + value + "'");
    };
    if (key == "require-signature") {
      options.signature.required = yes_no();
    } else if (key == "trusted-keys") {
      if (value.empty() || value[0] != '/') throw std::invalid_argument(where + ": trusted-keys needs an absolute path");
      options.signature.trusted_keys = value;
    } else if (key == "audit-log") {
      if (value != "none" && (value.empty() || value[0] != '/')) {
        throw std::invalid_argument(where + ": audit-log needs an absolute path, or none");
      }
      options.audit.file = value == "none" ? "" : value;
    } else if (key == "audit-syslog") {
      options.audit.syslog = yes_no();
    } else {
      throw std::invalid_argument(where + ": unknown key '" + key +
                                  "' (known: require-signature, trusted-keys, audit-log, audit-syslog)");
    }
  }
  return true;
}

}  // namespace polus
